"""What examples, tutorials, the CLI and studies run on: bundled data sets (no download), named networks, configs."""
