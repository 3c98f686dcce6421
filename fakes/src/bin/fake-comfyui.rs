//! A fake ComfyUI server for running Mage's `comfyui` render backend on a
//! machine without a GPU: `fake-comfyui --addr 127.0.0.1:8188`.

use std::time::Duration;

use clap::Parser;
use mage_fakes::comfyui::FakeComfy;

#[derive(Parser)]
#[command(about = "A fake ComfyUI server (HTTP + WebSocket API) that renders test patterns with ffmpeg")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8188")]
    addr: std::net::SocketAddr,
    /// Time each sampler step takes.
    #[arg(long, default_value_t = 100)]
    step_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fake = FakeComfy::start_on(args.addr).await?;
    fake.set_step_delay(Duration::from_millis(args.step_ms));
    println!("fake ComfyUI listening on {}", fake.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
