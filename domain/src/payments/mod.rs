//! Payments through Stripe: starting a Checkout (`checkout`), ending a
//! subscription with its period (`billing`), taking
//! webhook events in (`signature`, `intake`), reading them (`stripe`) and
//! settling them into orders, subscriptions and credits (`settle`).

pub mod billing;
pub mod checkout;
pub mod intake;
pub mod settle;
pub mod signature;
pub mod stripe;
