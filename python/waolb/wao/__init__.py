"""WAO's side of scoring: NodeConfigs, power predictors and their basic-auth Secrets."""
