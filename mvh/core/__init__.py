"""Small concepts every room shares, each defined once: devices and precisions, L2 normalisation, file
identity, the JSON round trip, synthetic data, and the `Backbone` protocol. Core imports no other room."""
