"""LoraAdapter controller: one reconciler per target Deployment decides what every pod must hold.

The desired set of a Deployment comes from an index of the LoraAdapters that name it; its pods and the
Deployment itself come from indexes too. Each served Deployment has one task (`controller`) that wakes
on events (its LoraAdapters, the Deployment, its pods, training jobs its adapters read), coalesces
what arrives during a pass, and resyncs once per `serving_resync_seconds`: cost follows change, not
the number of adapters. A pass: read the Deployment once into a frozen `DeploymentView` (again only
after the pass writes it), enable LoRA under the Deployment's opt-in (once: a restart), keep Static
adapters in the one merged `--lora-modules`, record what it is about to load in the ConfigMap
`<deployment>-loraplane-loaded` (owned by the Deployment), then per pod: list `/v1/models`, unload
what loraplane loaded and nobody claims any more, load what is missing (bounded, in parallel), swap
versions one pod at a time, and open the pod's readiness gate once it holds every adapter that can
load. Each adapter's status is then a pure
function of the pass, written only when it changed.

The pure logic, each in one place and tested without a cluster:

- `loraplane.builders.serving`: the Deployment: `DeploymentView` (what a pass reads of it: the vLLM
  container's arguments, flags and environment, LoRA on/off, gate, opt-in and API-key annotations,
  claim mounts) and the patches written to it (`enable_lora_patch`, `static_patch`, `cleanup_patch`)
  and to the record ConfigMap (`record_config_map`);
- `loraplane.status.resolution`: resolution and plan: each adapter's served name, path and rank, or why
  it has none (`resolve`), served-name conflicts, the base-model check, the server's API key;
- `loraplane.status.adapter`: status: the pods as a pass sees them (`PodView`, `PodResult`), when a
  gate may open, each LoraAdapter's status from a pass (`observe`).

Modules here (the side effects), from the outside in:

- `kopf_handlers`: the kopf handlers (events that wake a Deployment's task, the finalizer);
- `controller`: one task per served Deployment: when to pass, and the status writes after it;
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
