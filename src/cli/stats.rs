//! `stats`: CPU, memory, network and block I/O per container, as docker computes them,
//! live on a terminal or once with `--no-stream`.

use serde_json::{json, Value};

use super::connection::Client;
use super::containers::StatsArgs;
use super::format::{self, Format};
use super::{enc, out, tty, Result};

pub(super) fn cpu_percent(stats: &Value) -> f64 {
    let num = |p: &str| stats.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    let cpu_delta =
        num("/cpu_stats/cpu_usage/total_usage") - num("/precpu_stats/cpu_usage/total_usage");
    let system_delta = num("/cpu_stats/system_cpu_usage") - num("/precpu_stats/system_cpu_usage");
    let cpus = stats
        .pointer("/cpu_stats/online_cpus")
        .and_then(Value::as_f64)
        .filter(|n| *n > 0.0)
        .or_else(|| {
            stats
                .pointer("/cpu_stats/cpu_usage/percpu_usage")
                .and_then(Value::as_array)
                .map(|a| a.len() as f64)
        })
        .unwrap_or(1.0);
    if cpu_delta > 0.0 && system_delta > 0.0 {
        cpu_delta / system_delta * cpus * 100.0
    } else {
        0.0
    }
}

pub(super) fn stats_row(id: &str, name: &str, s: &Value, trunc: bool) -> Value {
    let num = |p: &str| s.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    let cache = s
        .pointer("/memory_stats/stats/inactive_file")
        .or_else(|| s.pointer("/memory_stats/stats/total_inactive_file"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let usage = (num("/memory_stats/usage") - cache).max(0.0);
    let limit = num("/memory_stats/limit");
    let (mut rx, mut tx) = (0.0, 0.0);
    for net in s
        .get("networks")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.values())
    {
        rx += net.get("rx_bytes").and_then(Value::as_f64).unwrap_or(0.0);
        tx += net.get("tx_bytes").and_then(Value::as_f64).unwrap_or(0.0);
    }
    let (mut read, mut write) = (0.0, 0.0);
    for io in s
        .pointer("/blkio_stats/io_service_bytes_recursive")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let v = io.get("value").and_then(Value::as_f64).unwrap_or(0.0);
        match io
            .get("op")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("read") => read += v,
            Some("write") => write += v,
            _ => {}
        }
    }
    json!({
        "ID": if trunc { format::short_id(id) } else { id.to_string() },
        "Container": if trunc { format::short_id(id) } else { id.to_string() },
        "Name": name.trim_start_matches('/'),
        "CPUPerc": format!("{:.2}%", cpu_percent(s)),
        "MemUsage": format!("{} / {}", format::bytes_size(usage), format::bytes_size(limit)),
        "MemPerc": format!("{:.2}%", if limit > 0.0 { usage / limit * 100.0 } else { 0.0 }),
        "NetIO": format!("{} / {}", format::human_size(rx), format::human_size(tx)),
        "BlockIO": format!("{} / {}", format::human_size(read), format::human_size(write)),
        "PIDs": format!("{}", num("/pids_stats/current") as i64),
    })
}

pub(super) const STATS_HEADERS: &[(&str, &str)] = &[
    ("ID", "CONTAINER ID"),
    ("Container", "CONTAINER"),
    ("Name", "NAME"),
    ("CPUPerc", "CPU %"),
    ("MemUsage", "MEM USAGE / LIMIT"),
    ("MemPerc", "MEM %"),
    ("NetIO", "NET I/O"),
    ("BlockIO", "BLOCK I/O"),
    ("PIDs", "PIDS"),
];

pub(super) async fn stats(client: &Client, args: StatsArgs) -> Result<()> {
    let template = args.format.clone().unwrap_or_else(|| {
        "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}".into()
    });
    let format = Format::parse(&template)?;
    let live = !args.no_stream && tty::stdout_is_tty();
    loop {
        let names: Vec<String> = if args.containers.is_empty() {
            let list = client
                .get(&format!("/containers/json?all={}", u8::from(args.all)))
                .await?;
            list.as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("Id").and_then(Value::as_str).map(str::to_string))
                .collect()
        } else {
            args.containers.clone()
        };
        let mut rows = Vec::new();
        for name in &names {
            let s = client
                .get(&format!("/containers/{}/stats?stream=0", enc(name)))
                .await?;
            let id = s.get("id").and_then(Value::as_str).unwrap_or(name);
            let cname = s.get("name").and_then(Value::as_str).unwrap_or(name);
            rows.push(stats_row(id, cname, &s, !args.no_trunc));
        }
        let text = format.render_rows(&rows, &format::headers(STATS_HEADERS))?;
        if live {
            // Clear the screen and redraw, as docker's live table.
            out(&format!("\x1b[2J\x1b[H{text}"));
        } else {
            out(&text);
        }
        if args.no_stream {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
