"""Patient-level privacy at a site: the policy, the accountant, the one budgeted DP run, the signed ledger, keys."""
