"""The deployment seen from outside: ``mlipilot cluster status`` and ``grpc-health``.

``status`` reads the Kubernetes API (in-cluster service account or a kubeconfig) for what a
Helm release of charts/mlipilot runs: the orchestrator and scorecard Deployments and their
endpoints, vLLM and the model it serves, the KubeRay RayCluster and its GPU workers.
``grpc-health`` asks a service's standard grpc.health.v1 endpoint (the helm test pod, and the
probes when the services speak TLS, which kubelet's own gRPC probe cannot).
"""
