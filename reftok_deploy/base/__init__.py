"""Base formats and helpers every layer uses: the graphs' I/O spec, files, manifests, .rtok, paths, videos. No torch."""
