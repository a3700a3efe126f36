"""Exchange with other tools: QuPath GeoJSON (`geojson`)."""
