"""The driver the offline jobs (SFT, preference) share."""
