"""De-identification at the hospital: video -> landmarks and STCNN features -> record, driven by the site manifest."""
