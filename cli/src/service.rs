//! `shoal service ...`: the client side of the `Control` API for services.
//! Specs are built from flags in [`spec`], task listings live in [`ps`], task
//! logs in [`logs`]; this module sends the requests and prints what comes back.

pub mod from_flags;
pub mod logs;
pub mod ps;

use anyhow::bail;
use shoal_proto::control_client::ControlClient;
use shoal_proto::watch_client::WatchClient;
use shoal_proto::{
    CreateServiceRequest, GetServiceRequest, ListServicesRequest, ListTasksRequest,
    RemoveServiceRequest, Service, ServiceMode, UpdateServiceRequest,
};
use tonic::transport::Channel;

use crate::args::{
    CreateArgs, InspectArgs, ListArgs, RemoveArgs, ScaleArgs, ServiceCommand, UpdateArgs,
};
use crate::output::{self, SERVICE_HEADERS, ServiceRow};
use crate::progress::{self, Goal};
use crate::{connect, inspect};

type Client = ControlClient<Channel>;
/// The `Watch` API, for the progress display.
type Watcher = WatchClient<Channel>;

pub async fn run(host: Option<&str>, command: ServiceCommand) -> anyhow::Result<()> {
    // Build and check the spec before connecting: a typo should not need a manager.
    if let ServiceCommand::Create(args) = &command {
        let spec = from_flags::create_spec(args, &from_flags::process_env)?;
        let channel = connect::dial(host).await?;
        let mut watcher = connect::watch_client(channel.clone());
        let mut client = connect::control_client(channel);
        return create(&mut client, &mut watcher, args, spec).await;
    }
    let channel = connect::dial(host).await?;
    let mut watcher = connect::watch_client(channel.clone());
    let mut client = connect::control_client(channel);
    match command {
        ServiceCommand::Create(_) => unreachable!("handled above"),
        ServiceCommand::Ls(args) => list(&mut client, &args).await,
        ServiceCommand::Ps(args) => ps::run(&mut client, &args).await,
        ServiceCommand::Inspect(args) => inspect_services(&mut client, &args).await,
        ServiceCommand::Scale(args) => scale(&mut client, &mut watcher, &args).await,
        ServiceCommand::Update(args) => update(&mut client, &mut watcher, &args).await,
        ServiceCommand::Rm(args) => remove(&mut client, &args).await,
        ServiceCommand::Logs(args) => logs::run(&mut client, &args).await,
    }
}

async fn create(
    client: &mut Client,
    watcher: &mut Watcher,
    args: &CreateArgs,
    spec: shoal_proto::ServiceSpec,
) -> anyhow::Result<()> {
    let response = client
        .create_service(CreateServiceRequest { spec: Some(spec) })
        .await?
        .into_inner();
    let service = response.service.unwrap_or_default();
    println!("{}", service.id);
    if args.detach || args.quiet {
        return Ok(());
    }
    progress::watch(client, watcher, &service.id, Goal::of(&service)).await
}

pub async fn get(client: &mut Client, reference: &str) -> anyhow::Result<Service> {
    let response = client
        .get_service(GetServiceRequest {
            service: reference.to_string(),
        })
        .await?
        .into_inner();
    match response.service {
        Some(service) => Ok(service),
        None => bail!("service {reference} not found"),
    }
}

/// Every task that `request` matches, a page at a time: a large service's
/// tasks may pass any one reply's size limit.
pub async fn list_tasks(
    client: &mut Client,
    mut request: ListTasksRequest,
) -> anyhow::Result<Vec<shoal_proto::Task>> {
    request.paged = true;
    let mut tasks = Vec::new();
    loop {
        let page = client.list_tasks(request.clone()).await?.into_inner();
        tasks.extend(page.tasks);
        if page.next.is_empty() {
            return Ok(tasks);
        }
        request.after = page.next;
    }
}

async fn list(client: &mut Client, args: &ListArgs) -> anyhow::Result<()> {
    let mut summaries = client
        .list_services(ListServicesRequest {})
        .await?
        .into_inner()
        .services;
    let name = |s: &shoal_proto::ServiceSummary| {
        s.service
            .as_ref()
            .and_then(|x| x.spec.as_ref())
            .map(|x| x.name.clone())
            .unwrap_or_default()
    };
    summaries.sort_by_key(name);
    let rows: Vec<ServiceRow> = summaries.iter().map(ServiceRow::from_summary).collect();
    output::print_list(
        &rows,
        args.quiet,
        args.format,
        &SERVICE_HEADERS,
        |r| &r.id,
        ServiceRow::table_row,
    )
}

async fn inspect_services(client: &mut Client, args: &InspectArgs) -> anyhow::Result<()> {
    let mut services = Vec::new();
    for reference in &args.services {
        services.push(get(client, reference).await?);
    }
    if args.pretty {
        let texts: Vec<String> = services.iter().map(inspect::service_pretty).collect();
        print!("{}", texts.join("\n"));
        return Ok(());
    }
    let values: Vec<serde_json::Value> = services.iter().map(inspect::service).collect();
    output::print_json(&values)
}

async fn scale(client: &mut Client, watcher: &mut Watcher, args: &ScaleArgs) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    let mut scaled = Vec::new();
    for (reference, replicas) in &args.targets {
        match scale_one(client, reference, *replicas).await {
            Ok(service) => {
                println!("{reference} scaled to {replicas}");
                scaled.push(service);
            }
            Err(e) => failures.push(format!("{reference}: {}", crate::output::describe(&e))),
        }
    }
    if !args.detach {
        for service in &scaled {
            progress::watch(client, watcher, &service.id, Goal::of(service)).await?;
        }
    }
    finish(failures)
}

async fn scale_one(client: &mut Client, reference: &str, replicas: u64) -> anyhow::Result<Service> {
    let service = get(client, reference).await?;
    let mut spec = service.spec.clone().unwrap_or_default();
    if spec.mode() != ServiceMode::Replicated {
        bail!("scale can only be used with replicated mode");
    }
    spec.replicas = replicas;
    send_update(client, &service, spec).await
}

async fn update(
    client: &mut Client,
    watcher: &mut Watcher,
    args: &UpdateArgs,
) -> anyhow::Result<()> {
    let service = get(client, &args.service).await?;
    let mut spec = service.spec.clone().unwrap_or_default();
    from_flags::apply_update(&mut spec, args, &from_flags::process_env)?;
    let updated = send_update(client, &service, spec).await?;
    if !args.quiet {
        println!("{}", args.service);
    }
    if args.detach || args.quiet {
        return Ok(());
    }
    progress::watch(client, watcher, &updated.id, Goal::of(&updated)).await
}

/// Send a changed spec with the version it was read at, so a concurrent change
/// is refused rather than overwritten.
async fn send_update(
    client: &mut Client,
    service: &Service,
    spec: shoal_proto::ServiceSpec,
) -> anyhow::Result<Service> {
    let request = UpdateServiceRequest {
        service: service.id.clone(),
        version: service.meta.unwrap_or_default().version,
        spec: Some(spec),
    };
    let response = client.update_service(request).await?.into_inner();
    Ok(response.service.unwrap_or_default())
}

async fn remove(client: &mut Client, args: &RemoveArgs) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for reference in &args.services {
        let request = RemoveServiceRequest {
            service: reference.clone(),
        };
        match client.remove_service(request).await {
            Ok(_) => println!("{reference}"),
            Err(status) => failures.push(format!("{reference}: {}", status.message())),
        }
    }
    finish(failures)
}

/// Docker's way with several targets: do them all, then report every failure.
fn finish(failures: Vec<String>) -> anyhow::Result<()> {
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}
