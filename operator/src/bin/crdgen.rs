//! Prints the ChatCluster CustomResourceDefinition as YAML; `crds/chatcluster.yaml` is its output.

use chat_operator::api::ChatCluster;
use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    print!("{}", serde_yaml::to_string(&ChatCluster::crd())?);
    Ok(())
}
