"""Seizure phantom: synthetic, labelled seizure videos with known ground truth."""
