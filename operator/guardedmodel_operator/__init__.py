"""The guardedmodel operator: reconciles GuardedModel resources into guarded Triton deployments."""
