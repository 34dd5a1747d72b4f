"""Everything that runs at a hospital: de-identification, the site store, local training."""
