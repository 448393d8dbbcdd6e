"""``edgespike run``'s machinery: frame sources, the capture/compute pipeline, sinks and the preview server."""
