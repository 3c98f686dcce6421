//! Payments through Stripe: starting a Checkout (`checkout`), taking
//! webhook events in (`signature`, `intake`), reading them (`stripe`) and
//! settling them into orders, subscriptions and credits (`settle`).

pub mod checkout;
pub mod intake;
pub mod settle;
pub mod signature;
pub mod stripe;
