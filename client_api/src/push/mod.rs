//! Push notifications (spec: "Push Notifications"): push rules, pushers and the notifications
//! list. The evaluation and delivery live in `hearth_core::push`.

pub mod notifications;
pub mod pushers;
pub mod rules;
