"""The application pipeline every command calls: prepare a source once (unpack, inspect,
read the guest, refuse what cannot boot), then convert, boot-check and publish it.

It sits above conversion/ and cloud/ and is the only place that combines them: cloud/ is the
Glance adapter and knows nothing of conversion or guests.
"""
