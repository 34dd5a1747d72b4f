"""Training at the hospital: local runs, cross-validation, one site's part of a federated round, prediction."""
