"""The auditor's side: an independent PLD accountant, ledger verification, the multi-site report (no torch, no opacus)."""
