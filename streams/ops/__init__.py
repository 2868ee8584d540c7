"""Operating aifleet: consumer lag, scaling advice, the lag exporter and their command line."""
