//! Payments through Stripe: starting a Checkout (`checkout`), taking
//! webhook events in (`signature`, `intake`) and settling them into orders
//! and credits (`settle`).

pub mod checkout;
pub mod intake;
pub mod settle;
pub mod signature;
pub mod stripe;
