"""LoraAdapter controller: one reconciler per target Deployment decides what every pod must hold.

The desired set of a Deployment comes from an index of the LoraAdapters that name it; its pods and the
Deployment itself come from indexes too. Each LoraAdapter's timer (and every event of a gated pod)
asks its Deployment's reconciler for a pass; passes of one Deployment never overlap (a lock) and a
caller that asked while a pass was queued reuses that pass, so handlers of different adapters never
race on a pod. A pass: enable LoRA under the Deployment's opt-in (once: a restart), keep Static
adapters in the one merged `--lora-modules`, then per pod: list `/v1/models`, unload what was deleted,
load what is missing, swap versions one pod at a time, and open the pod's readiness gate once it holds
every adapter that can load. Each adapter's status is then a pure function of the pass.

Modules, from the outside in:

- `kopf_handlers`: the kopf handlers (the adapters' timer and finalizer, gated pods' events);
- `indexes`: the kopf indexes the passes read instead of calling the API;
- `reconciler`: one Deployment's pass, and the pure choices it makes (pods, the pod that may swap);
- `deployment_changes`: Deployment-level writes (enable LoRA for HotLoad, Static `--lora-modules`),
  read-modify-write against the indexed `resourceVersion`;
- `pod_loading`: per pod: list, unload, load and confirm adapters;
- `gate`: the pod readiness gate condition;
- `api_keys`: the API key of a server started with `--api-key`, from the Secret its annotation or a
  LoraAdapter names;
- `events`: Events on adapters, Deployments and pods;
- `state`: what a Deployment's reconciler remembers between passes.
"""

from loraplane.handlers.adapters import indexes, kopf_handlers  # noqa: F401 - registers the handlers
