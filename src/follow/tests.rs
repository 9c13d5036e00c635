//! The follower against fake tiers.
