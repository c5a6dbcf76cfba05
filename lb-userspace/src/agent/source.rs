//! Where the agent's objects come from: a folder of manifests, or the
//! Kubernetes API through reflectors. Both hand the model the same
//! `Objects`, rebuilt whole each time (a Delete event is a hint, not state).
use std::path::PathBuf;

use anyhow::{bail, Result};
use tokio::sync::watch;

use crate::{
    cli::AgentArgs,
    source::{
        kube::{KubeSource, SourceStatus},
        manifests::{self, Folder, LoadReport, Objects},
    },
};

pub enum Source {
    Manifests {
        dir: PathBuf,
        folder: Folder,
        changes: watch::Receiver<u64>,
    },
    Kube {
        source: KubeSource,
        /// For the LoadBalancer status writer and the node leases.
        client: kube::Client,
    },
}

impl Source {
    /// For the Kubernetes API, returns once every store holds its initial
    /// list, so a (re)starting agent never programs a partial view.
    pub async fn open(args: &AgentArgs) -> Result<Self> {
        if let Some(dir) = &args.manifests {
            let (tx, changes) = watch::channel(0u64);
            tokio::spawn(manifests::watch_dir(dir.clone(), tx));
            return Ok(Source::Manifests {
                dir: dir.clone(),
                folder: Folder::default(),
                changes,
            });
        }
        let client = KubeSource::connect(args.kubeconfig.as_deref()).await?;
        let mut source = KubeSource::start(
            client.clone(),
            &args.node_name,
            args.service_proxy_name.clone(),
        );
        tracing::info!("waiting for the initial lists of Services, EndpointSlices and this Node");
        source.ready().await;
        Ok(Source::Kube { source, client })
    }

    /// The API client; `None` for the manifests source.
    pub fn client(&self) -> Option<&kube::Client> {
        match self {
            Source::Manifests { .. } => None,
            Source::Kube { client, .. } => Some(client),
        }
    }

    pub fn load(&mut self) -> Result<(Objects, LoadReport)> {
        match self {
            Source::Manifests { dir, folder, .. } => folder.reload(dir),
            Source::Kube { source, .. } => Ok((source.snapshot(), LoadReport::default())),
        }
    }

    pub async fn changed(&mut self) -> Result<()> {
        match self {
            Source::Manifests { changes, .. } => {
                if changes.changed().await.is_err() {
                    bail!("manifests watcher stopped");
                }
                Ok(())
            }
            Source::Kube { source, .. } => source.changed().await,
        }
    }

    /// The API watchers' state; `None` for the manifests source.
    pub fn status(&self) -> Option<SourceStatus> {
        match self {
            Source::Manifests { .. } => None,
            Source::Kube { source, .. } => Some(source.status()),
        }
    }
}
