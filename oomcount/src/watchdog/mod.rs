//! The watchdog feature: the rules that judge OOM activity ([`rules`]), the keeper that turns
//! their verdict into keepalives ([`keeper`]), and the watchdog device it pings ([`device`]).
pub(crate) mod device;
pub mod keeper;
pub mod rules;
