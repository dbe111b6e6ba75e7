"""What the guest's facts mean for a target: OpenStack's vocabulary, derived properties, refusals."""
