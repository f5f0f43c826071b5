"""Google Cloud providers (``emulator`` and ``gcp`` environments), on the official
google-cloud-* clients. Imported only when an app uses them."""
