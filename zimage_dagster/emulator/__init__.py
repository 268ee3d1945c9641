"""A faithful local stand-in for the Z-Image-Turbo API."""
