//! `hearth`: the Matrix homeserver binary. Reads the configuration, opens the store, wires the
//! core to the API routers, and serves.

mod complete_writes;
mod config;
mod error_bodies;
mod listen;
mod push_gateway;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hearth_client_api::config::RateLimit;
use hearth_client_api::{ApiConfig, AppState};
use hearth_core::keys::ServerKeys;
use hearth_core::presence::PresenceConfig;
use hearth_core::{Core, CoreConfig};
use hearth_federation::{Federation, FederationConfig};
use hearth_storage::RedbStore;
use ruma::{OwnedServerName, RoomVersionId};

use crate::config::Config;

// mimalloc hands large freed blocks (argon2's 19 MiB of scratch per password hash, big sync
// responses) back to the system; glibc's malloc kept them, and RSS grew by hundreds of MB under a
// burst of logins.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "hearth", version, about = "A Matrix homeserver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve {
        /// TOML configuration file; every key can also be set as HEARTH_<KEY>.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replace the server's signing key by a new one; the old one stays published as an old
    /// verify key. Restart the server afterwards.
    RotateKey {
        /// TOML configuration file; every key can also be set as HEARTH_<KEY>.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, rotate) = match cli.command {
        Command::Serve { config } => (config, false),
        Command::RotateKey { config } => (config, true),
    };
    let config = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hearth: {e}");
            return ExitCode::from(2);
        }
    };
    if rotate {
        return rotate_key(&config);
    }
    init_logging(&config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hearth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("hearth: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // ruma's state resolution logs every auth check at info: two lines per event.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,ruma_state_res=warn,tantivy=warn")
        });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let server_name =
        OwnedServerName::try_from(config.server_name.as_str()).map_err(|e| e.to_string())?;
    let store = RedbStore::open(
        &config.data_dir.join("hearth.redb"),
        config.db_cache_mb << 20,
    )
    .map_err(|e| {
        format!(
            "cannot open the database in {}: {e}",
            config.data_dir.display()
        )
    })?;
    let keys = Arc::new(
        ServerKeys::load_or_generate(&config.data_dir, server_name.clone())
            .map_err(|e| e.to_string())?,
    );
    let ip_range_denylist = hearth_federation::outbound::IpRanges::parse(
        config
            .ip_range_denylist
            .as_deref()
            .unwrap_or(hearth_federation::outbound::DEFAULT_DENYLIST),
    )
    .map_err(|e| format!("ip_range_denylist: {e}"))?;
    let federation_config = FederationConfig {
        verify_tls: config.federation_verify_tls,
        extra_ca_pem: read_pem("federation_ca_file", config.federation_ca_file.as_deref())?,
        ip_range_denylist: ip_range_denylist.clone(),
    };
    let federation = Federation::new(keys.clone(), &federation_config)?;

    let mut core_config = CoreConfig::new(server_name);
    core_config.default_room_version =
        RoomVersionId::try_from(config.default_room_version.as_str())
            .ok()
            .filter(hearth_core::rooms::version::is_supported)
            .ok_or_else(|| {
                format!(
                    "default_room_version {:?} is not supported",
                    config.default_room_version
                )
            })?;
    let secs = |key: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(format!("{key} must be a positive number of seconds"))
        }
    };
    core_config.presence = PresenceConfig {
        enabled: config.presence,
        unavailable_after: secs(
            "presence_unavailable_secs",
            config.presence_unavailable_secs,
        )?,
        offline_after: secs("presence_offline_secs", config.presence_offline_secs)?,
    };
    core_config.delivery_receipts_max_members = config.delivery_receipts_max_members;
    core_config.media = hearth_core::media::MediaConfig {
        dir: Some(config.data_dir.join("media")),
        max_upload_bytes: config.max_upload_size as u64,
        quota_bytes: config.media_quota_bytes as u64,
    };
    core_config.search = hearth_core::search::SearchConfig {
        dir: Some(config.data_dir.join("search")),
    };
    core_config.push = hearth_core::push::PushConfig {
        online_grace: Duration::from_secs_f64(config.push_online_grace_secs.max(0.0)),
        include_content: config.push_include_content,
        group_unread_count_by_room: config.push_group_unread_count_by_room,
    };
    core_config.refreshable_token_lifetime = secs(
        "refreshable_access_token_lifetime_secs",
        config.refreshable_access_token_lifetime_secs,
    )?;
    let core = Arc::new(
        Core::new(core_config, Arc::new(store), keys, federation.clone())
            .map_err(|e| e.to_string())?,
    );
    core.presence.start_reaper();
    core.search.start();
    core.push
        .start(Arc::new(push_gateway::HttpPushGateway::new(
            ip_range_denylist,
            read_pem("push_ca_file", config.push_ca_file.as_deref())?,
        )?))
        .await
        .map_err(|e| e.to_string())?;
    federation.start_sending(core.clone());

    let registration = config.registration_mode();
    let api = ApiConfig {
        registration,
        registration_token: config.registration_token.clone(),
        max_request_bytes: config.max_request_bytes,
        rate_limit: config.rate_limit.then_some(RateLimit {
            per_second: config.rate_limit_per_second,
            burst: config.rate_limit_burst,
        }),
        action_limits: config.action_limits()?,
        public_base_url: config
            .public_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.listen)),
        websocket_ping: secs("websocket_ping_secs", config.websocket_ping_secs)?,
        legacy_unauthenticated_media: config.legacy_unauthenticated_media,
        admin_users: config
            .admin_users
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let limits = listen::ConnectionLimits {
        header_timeout: secs("http_header_timeout_secs", config.http_header_timeout_secs)?,
        max_per_ip: config.max_connections_per_ip,
    };
    let body_timeout = secs("http_body_timeout_secs", config.http_body_timeout_secs)?;
    let app = hearth_client_api::router(AppState::new(core.clone(), api))
        .merge(hearth_federation::routes(core.clone(), federation.clone()))
        .layer(axum::middleware::from_fn(
            complete_writes::run_writes_to_completion,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .layer(axum::middleware::from_fn(error_bodies::matrix_json_errors))
        .layer(trace_layer());

    let handle = axum_server::Handle::new();
    let federation_server = match &config.federation_listen {
        Some(addr) => {
            let (cert, key) = (config.tls_cert.as_ref(), config.tls_key.as_ref());
            let (Some(cert), Some(key)) = (cert, key) else {
                return Err("federation_listen needs tls_cert and tls_key".into());
            };
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| format!("TLS certificate or key: {e}"))?;
            let fed_app = hearth_federation::server(core.clone(), federation.clone())
                .layer(axum::middleware::from_fn(
                    complete_writes::run_writes_to_completion,
                ))
                .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                    body_timeout,
                ))
                .layer(axum::middleware::from_fn(error_bodies::matrix_json_errors))
                .layer(trace_layer());
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let server = listen::server(
                listener,
                axum_server::tls_rustls::RustlsAcceptor::new(tls),
                limits,
            )
            .handle(handle.clone());
            tracing::info!(federation_listen = %addr, "serving federation over TLS");
            Some(tokio::spawn(async move {
                let app = fed_app.into_make_service_with_connect_info::<SocketAddr>();
                if let Err(e) = server.serve(app).await {
                    tracing::error!(error = %e, "federation listener stopped");
                }
            }))
        }
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(
        server_name = %core.config.server_name,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        ?registration,
        "Hearth is serving"
    );
    tokio::spawn({
        let handle = handle.clone();
        async move {
            shutdown_signal().await;
            // Long-polls would hold a graceful shutdown for their whole timeout.
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        }
    });
    listen::server(listener, axum_server::accept::DefaultAcceptor, limits)
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    if let Some(f) = federation_server {
        f.abort();
    }
    Ok(())
}

/// The PEM file a configuration key names, if it names one.
fn read_pem(key: &str, path: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, String> {
    path.map(|p| std::fs::read(p).map_err(|e| format!("{key} {}: {e}", p.display())))
        .transpose()
}

/// Request spans name the path only: query strings may carry access tokens.
fn trace_layer() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&axum::extract::Request) -> tracing::Span + Clone,
> {
    // A debug span: at the default level it costs nothing, where an info span formatted its
    // fields on every request (a measurable share of a /sync under fan-out).
    tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &axum::extract::Request| {
        tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

/// `hearth rotate-key`: a new signing key in the data directory, the old one retired.
fn rotate_key(config: &Config) -> ExitCode {
    let server_name = match OwnedServerName::try_from(config.server_name.as_str()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("hearth: server_name: {e}");
            return ExitCode::from(2);
        }
    };
    match ServerKeys::rotate(&config.data_dir, server_name) {
        Ok((old, new)) => {
            println!("signing key rotated: {old} retired, {new} in use from the next start");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hearth: rotating the signing key: {e}");
            ExitCode::from(1)
        }
    }
}
