//! A fake Replicate API for running Mage's `replicate` render backend
//! without an account: `fake-replicate --addr 127.0.0.1:8191`, then point
//! Mage at the printed URL with the printed token.

use std::time::Duration;

use clap::Parser;
use mage_fakes::replicate::FakeReplicate;

#[derive(Parser)]
#[command(
    about = "A fake Replicate HTTP API that renders test patterns with ffmpeg and sends signed webhooks"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8191")]
    addr: std::net::SocketAddr,
    /// Secret webhooks are signed with, `whsec_` and base64.
    #[arg(
        long,
        env = "REPLICATE_WEBHOOK_SECRET",
        default_value = "whsec_ZmFrZS1yZXBsaWNhdGUtd2ViaG9vay1zZWNyZXQ="
    )]
    webhook_secret: String,
    /// The API token to accept.
    #[arg(long, default_value = mage_fakes::replicate::DEFAULT_TOKEN)]
    token: String,
    /// How long each prediction runs once processing.
    #[arg(long, default_value_t = 2000)]
    run_ms: u64,
    /// Progress steps each prediction logs.
    #[arg(long, default_value_t = 10)]
    steps: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fake = FakeReplicate::start_on(args.addr, &args.webhook_secret).await?;
    fake.set_token(&args.token);
    fake.set_run_time(Duration::from_millis(args.run_ms));
    fake.set_steps(args.steps);
    println!("fake Replicate listening on {} (token {})", fake.url(), fake.token());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
