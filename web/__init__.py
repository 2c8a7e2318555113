"""The browser viewer (`rstar ui`)."""
