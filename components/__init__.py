"""kube-hardway components: one module per component, plus the spec and remote primitives."""
