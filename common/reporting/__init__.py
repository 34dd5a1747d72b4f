"""Self-contained HTML building blocks shared by the demo report and the audit report."""
