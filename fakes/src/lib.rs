//! Stand-ins for the outside services Mage talks to, speaking their real
//! protocols over real sockets, so tests exercise Mage's own clients end to
//! end. Nothing here mocks Mage's code.

pub mod comfyui;
pub mod dns;
pub mod fixtures;
pub mod replicate;
pub mod stripe;
