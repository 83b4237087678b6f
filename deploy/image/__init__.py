"""The service image, built with the real engine (`make image`)."""
