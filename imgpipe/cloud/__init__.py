"""Cloud out: auth, Glance upload and publishing."""
