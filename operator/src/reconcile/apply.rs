//! Side effects on children: server-side apply under one field manager, pruning what is no
//! longer desired, and create-once for generated Secrets.

use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeSet;

use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams,
    },
};

use crate::Error;
use crate::build::{
    ClusterRef, Desired,
    secrets::{Generated, PLACEHOLDER_ANNOTATION},
};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "chat-operator";

/// Server-side apply `obj`, forcing ownership of the fields it sets: the operator is the
/// authority on them, so a hand edit of, say, a replica count is reverted.
pub async fn apply(client: &Client, namespace: &str, obj: &DynamicObject) -> Result<(), Error> {
    let types = obj.types.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let gvk = GroupVersionKind::try_from(&types)
        .map_err(|e| Error::InvalidObject(format!("{} {name}: {e}", types.kind)))?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk));
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(Error::kube("apply", &gvk.kind, &name))?;
    Ok(())
}

/// Delete the children of `cluster` that are no longer desired: objects of a kind the
/// operator applies, carrying the cluster's labels and naming it as their controller, that
/// are not in `desired`. What someone else made (no controller reference to this cluster) is
/// never touched. Returns what was deleted, as `Kind name`.
pub async fn prune(
    client: &Client,
    owner: &ClusterRef,
    desired: &[DynamicObject],
) -> Result<Vec<String>, Error> {
    let wanted: BTreeSet<(String, String)> = desired
        .iter()
        .map(|o| {
            let kind = o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
            (kind, o.name_any())
        })
        .collect();
    let children = ListParams::default().labels(&owner.children_query());
    let mut pruned = Vec::new();
    for resource in Desired::kinds() {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &owner.namespace, &resource);
        let list =
            api.list(&children)
                .await
                .map_err(Error::kube("list", &resource.kind, "children"))?;
        for obj in list.items {
            let name = obj.name_any();
            if !owner.controls(&obj.metadata)
                || wanted.contains(&(resource.kind.clone(), name.clone()))
            {
                continue;
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => pruned.push(format!("{} {name}", resource.kind)),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("delete", &resource.kind, &name)(e)),
            }
        }
    }
    Ok(pruned)
}

/// Create the generated Secret `what` unless it exists. Returns whether it was created.
/// Never updates an existing one: the database already holds those passwords.
pub async fn ensure_generated(
    client: &Client,
    owner: &ClusterRef,
    what: Generated,
) -> Result<bool, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &owner.namespace);
    let name = what.name(owner);
    if let Some(existing) = api
        .get_metadata_opt(&name)
        .await
        .map_err(Error::kube("get", "Secret", &name))?
    {
        // Rendered output applied as is: its values are the same for everyone.
        if existing
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(PLACEHOLDER_ANNOTATION))
        {
            return Err(Error::PlaceholderSecret(name));
        }
        // One this cluster did not make holds values someone else chose (a planted database
        // password, a certificate chat-xds would then be granted): never adopted.
        if !owner.controls(&existing.metadata) {
            return Err(Error::ForeignSecret(name));
        }
        return Ok(false);
    }
    let secret = what.generate(owner)?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(true),
        // Another replica of the operator won the race; its Secret stands.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(Error::kube("create", "Secret", &name)(e)),
    }
}
