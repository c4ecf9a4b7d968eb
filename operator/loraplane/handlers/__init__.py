"""kopf handlers, one module per kind. They validate the body into the model once, call pure builders
and status functions, and leave API calls to `loraplane.kube`."""
