//! The shoot-out's part of the document: what was compared and how, then one section per
//! scenario with its contenders' table, what the scenario measured besides latency, the
//! verdict and the charts. Every figure comes from the shoot-out's analysis (`Shootout`).

use fulcrum_loadgen::results::{ScenarioParams, ScenarioResult};

use crate::analysis::{ContenderFigures, ScenarioAnalysis, Shootout};
use crate::charts;
use crate::conclusion;
use crate::document::{Block, Column, Section, Table};
use crate::units::{count, counted, ms, num, pct, rate, rate_u, secs};

/// The shoot-out's sections: an introduction, then one per scenario.
pub fn sections(a: Option<&Shootout<'_>>) -> Vec<Section> {
    let mut intro = Section::new("shootout", "Shoot-out", 3, Vec::new());
    let Some(a) = a.filter(|a| !a.scenarios.is_empty()) else {
        intro.blocks = vec![
            Block::Para("No shoot-out in this file (fulcrum experiment runs one).".into()),
            Block::chart(
                None,
                "No shoot-out in this file: no contender comparison chart.",
            ),
            Block::chart(
                None,
                "No shoot-out in this file: no share-of-requests chart.",
            ),
        ];
        return vec![intro];
    };
    intro.blocks = vec![
        Block::Para(format!(
            "Each scenario offers the same load to every contender (fulcrum's policies and the peer balancers), in \
             {} each, interleaved and of the same length. Contenders are ranked by the median of their per-round \
             p99 (percentiles are never averaged), and a difference counts only where the per-round ranges do not \
             overlap. Goodput counts 2xx and 3xx responses per second. \"Shares vs capacity\" names the cluster \
             whose workers got the most requests beyond their share of the CPU.",
            counted(a.rounds as usize, "round")
        )),
        Block::Para(peers_text(a)),
    ];
    let mut out = vec![intro];
    out.extend(a.scenarios.iter().map(|s| scenario(a, s)));
    out
}

/// Which peers ran (with their versions) and which did not, and why.
fn peers_text(a: &Shootout<'_>) -> String {
    if a.peers.is_empty() {
        return "No peer balancer was looked for: fulcrum's policies are compared only with each other.".into();
    }
    let ran: Vec<String> = a
        .peers
        .iter()
        .filter(|p| p.missing.is_none())
        .map(|p| match &p.version {
            Some(v) => format!("{} {v} ({})", p.name, p.policy),
            None => format!("{} ({})", p.name, p.policy),
        })
        .collect();
    let mut s = if ran.is_empty() {
        "No peer balancer ran.".to_owned()
    } else {
        format!(
            "Peers that ran: {}. Every contender, fulcrum included, runs without an access log.",
            ran.join(", ")
        )
    };
    for p in &a.missing_peers {
        s.push_str(&format!(
            " {} ({}) did not run: {}; it is absent from every scenario.",
            p.name,
            p.policy,
            p.missing.as_deref().unwrap_or("no reason recorded")
        ));
    }
    s
}

fn scenario(a: &Shootout<'_>, s: &ScenarioAnalysis<'_>) -> Section {
    let sc = s.scenario;
    let mut blocks = vec![
        Block::Para(setting_text(a, s)),
        Block::Table(contender_table(s)),
    ];
    if let Some(t) = antagonist_table(sc) {
        blocks.push(Block::Table(t));
    }
    if let Some(t) = cost_table(sc) {
        blocks.push(Block::Table(t));
    }
    blocks.push(Block::Para(conclusion::scenario_finding(s)));
    blocks.push(Block::chart(
        charts::scenario_latency(s),
        "No contender ran in this scenario: no comparison chart.",
    ));
    blocks.push(Block::chart(
        charts::scenario_shares(s),
        "No per-worker shares in this scenario: no share-of-requests chart.",
    ));
    Section::new(
        format!("shootout-{}", anchor_part(&sc.name)),
        format!("Scenario: {}", sc.name),
        4,
        blocks,
    )
}

/// A scenario name as part of an HTML id: letters, digits and dashes only.
fn anchor_part(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The scenario's description, parameters, offered load, rounds and contender sizes.
fn setting_text(a: &Shootout<'_>, s: &ScenarioAnalysis<'_>) -> String {
    let sc = s.scenario;
    let mut description = sc.description.trim_end_matches('.').to_owned();
    if let Some(first) = description.get(..1) {
        description = first.to_uppercase() + &description[1..];
    }
    format!(
        "{description}. Settings: {}. Offered load: {}, {} of the measured total capacity, to every contender; {} × {} \
         each. {}",
        params_text(&sc.params),
        rate_u(sc.rate),
        pct(sc.fraction),
        counted(a.rounds as usize, "round"),
        secs(sc.round_s),
        sizes_text(&s.contenders)
    )
}

fn params_text(p: &ScenarioParams) -> String {
    match p {
        ScenarioParams::Steady => "none (a constant rate, nothing else running)".into(),
        ScenarioParams::Antagonist {
            instances,
            share,
            on_s,
            off_s,
        } => format!(
            "a co-tenant on {} takes {} of its host's CPU quota for {} on, then {} off",
            instances.join(", "),
            pct(*share),
            secs(*on_s),
            secs(*off_s)
        ),
        ScenarioParams::Replicas {
            replicas,
            threads_each,
        } => format!(
            "{} per contender with {} each, the load spread evenly over them",
            counted(*replicas, "balancer instance"),
            counted(*threads_each, "thread")
        ),
        ScenarioParams::HeavyTail {
            distribution,
            mean_us,
            sigma,
            mix_file,
        } => format!(
            "per-request CPU cost drawn from a {distribution} distribution with mean {} µs and σ {} (request mix {})",
            num(*mean_us),
            num(*sigma),
            mix_file
        ),
    }
}

/// Proxy threads × instances, said once when every contender had the same.
fn sizes_text(cs: &[ContenderFigures<'_>]) -> String {
    let size = |c: &ContenderFigures<'_>| (c.contender.threads, c.contender.instances);
    match cs.first() {
        None => "No contender ran.".into(),
        Some(first) if cs.iter().all(|c| size(c) == size(first)) => {
            let (t, i) = size(first);
            format!(
                "Every contender ran {} (worker processes for nginx) {}.",
                counted(t, "proxy thread"),
                if i == 1 {
                    "on 1 instance".to_owned()
                } else {
                    format!("on each of {i} instances")
                }
            )
        }
        Some(_) => format!(
            "Proxy threads (worker processes for nginx) × instances: {}.",
            cs.iter()
                .map(|c| format!("{} {}", c.label(), threads_text(c)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn threads_text(c: &ContenderFigures<'_>) -> String {
    format!("{} × {}", c.contender.threads, c.contender.instances)
}

/// A scenario's tables are captioned with its name first.
fn scenario_caption(sc: &ScenarioResult, what: &str) -> String {
    format!("{}: {what}", sc.name)
}

fn contender_table(s: &ScenarioAnalysis<'_>) -> Table {
    let mut t = Table::new(vec![
        Column::text("Contender"),
        Column::text("Balancer"),
        Column::text("Threads × instances"),
        Column::text("p99 per round (ms)"),
        Column::number("Median p99 (ms)"),
        Column::number("Median p50 (ms)"),
        Column::number("Max (ms)"),
        Column::number("Goodput (req/s)"),
        Column::number("Of offered"),
        Column::number("Errors"),
        Column::text("Shares vs capacity"),
    ])
    .caption(scenario_caption(
        s.scenario,
        "contenders by median per-round p99, best first",
    ));
    for c in &s.contenders {
        t.row(vec![
            c.label().to_owned(),
            c.contender.balancer.clone(),
            threads_text(c),
            if c.round_p99_ms.is_empty() {
                "no rounds".into()
            } else {
                c.round_p99_ms
                    .iter()
                    .map(|v| ms(*v))
                    .collect::<Vec<_>>()
                    .join(" / ")
            },
            ms(c.median_p99_ms),
            ms(c.median_p50_ms),
            ms(c.max_ms),
            rate(c.goodput),
            pct(c.goodput_share),
            count(c.errors),
            shares_text(c),
        ]);
    }
    t
}

/// The largest over-share, or that there is none worth a column's width.
fn shares_text(c: &ContenderFigures<'_>) -> String {
    match &c.over_share {
        Some(o) if o.notable => format!(
            "c{} workers {} of requests for {} of capacity",
            o.cluster,
            pct(o.share_of_requests),
            pct(o.share_of_capacity)
        ),
        Some(_) => "every cluster within 1 point of its capacity".into(),
        None => "–".into(),
    }
}

fn antagonist_table(sc: &ScenarioResult) -> Option<Table> {
    if sc.antagonists.is_empty() {
        return None;
    }
    let asked = match &sc.params {
        ScenarioParams::Antagonist { share, .. } => format!(", asked to take {}", pct(*share)),
        _ => String::new(),
    };
    let mut t = Table::new(vec![
        Column::text("Host"),
        Column::text("Instance id"),
        Column::number("Co-tenant CPU (s)"),
        Column::number("On (s)"),
        Column::number("Of host's quota while on"),
        Column::number("Throttled periods"),
        Column::number("Host CPU (s)"),
    ])
    .caption(scenario_caption(
        sc,
        &format!("what each co-tenant took{asked}, read from the cgroups"),
    ));
    for x in &sc.antagonists {
        t.row(vec![
            x.instance.clone(),
            x.instance_id.clone(),
            num(x.cpu_s),
            num(x.on_s),
            pct(x.share_while_on),
            format!(
                "{} of {} ({})",
                count(x.throttled_periods),
                count(x.periods),
                pct(x.throttled_periods as f64 / x.periods.max(1) as f64)
            ),
            num(x.group_cpu_s),
        ]);
    }
    Some(t)
}

fn cost_table(sc: &ScenarioResult) -> Option<Table> {
    let c = sc.cost.as_ref()?;
    let mut t = Table::new(vec![
        Column::text("Per-request CPU"),
        Column::number("Configured (µs)"),
        Column::number("Sent (µs)"),
    ])
    .caption(scenario_caption(
        sc,
        "per-request CPU cost configured, and what the sent requests asked for",
    ));
    for (what, asked, sent) in [
        ("mean", c.mean_us, c.sent_mean_us),
        ("p50", c.p50_us, c.sent_p50_us),
        ("p99", c.p99_us, c.sent_p99_us),
    ] {
        t.row(vec![what.into(), num(asked), num(sent)]);
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample;

    #[test]
    fn one_section_per_scenario_with_a_row_per_contender() {
        let r = sample::experiment();
        let a = Shootout::new(&r).unwrap();
        let secs = sections(Some(&a));
        assert_eq!(secs.len(), 5);
        assert_eq!(secs[1].id, "shootout-steady");
        assert_eq!(secs[4].id, "shootout-heavy-tail");
        let Block::Table(t) = &secs[1].blocks[1] else {
            panic!("no contender table")
        };
        assert_eq!(t.rows.len(), 5);
        // Best first: fulcrum adaptive (12.5 ms), then fulcrum p2c-ewma (13.25 ms).
        assert_eq!(t.rows[0][0], "fulcrum adaptive");
        assert_eq!(t.rows[0][3], "12.0 / 13.0");
        assert_eq!(t.rows[0][4], "12.5");
        assert_eq!(t.rows[0][8], "100%");
        assert_eq!(
            t.rows[0][10],
            "every cluster within 1 point of its capacity"
        );
        assert_eq!(
            t.rows[1][10],
            "c1 workers 56% of requests for 38% of capacity"
        );
    }

    #[test]
    fn scenarios_state_their_settings_and_side_measurements() {
        let r = sample::experiment();
        let a = Shootout::new(&r).unwrap();
        let secs = sections(Some(&a));
        let text = |i: usize| match &secs[i].blocks[0] {
            Block::Para(p) => p.clone(),
            _ => panic!(),
        };
        assert!(text(1).contains("Offered load: 1,020 req/s, 85% of the measured total capacity"));
        assert!(text(1).contains("2 rounds × 4.00 s each"));
        assert!(text(1).contains(
            "Every contender ran 2 proxy threads (worker processes for nginx) on 1 instance."
        ));
        assert!(text(2).contains("i-large0, i-large1 takes 50% of its host's CPU quota"));
        assert!(text(3).contains("3 balancer instances per contender with 1 thread each"));
        assert!(text(3).contains("Every contender ran 1 proxy thread (worker processes for nginx) on each of 3 instances."));
        assert!(text(4).contains("lognormal distribution with mean 1,000 µs"));
        let tables = |i: usize| {
            secs[i]
                .blocks
                .iter()
                .filter(|b| matches!(b, Block::Table(_)))
                .count()
        };
        assert_eq!((tables(1), tables(2), tables(3), tables(4)), (1, 2, 1, 2));
        let Block::Para(peers) = &secs[0].blocks[1] else {
            panic!()
        };
        assert!(peers.contains("nginx 1.24.0 (least_conn)"), "{peers}");
    }

    #[test]
    fn missing_peers_are_named() {
        let r = sample::experiment_missing_peer();
        let a = Shootout::new(&r).unwrap();
        let text = peers_text(&a);
        assert!(
            text.contains("haproxy (leastconn) did not run: not installed (no haproxy on PATH)"),
            "{text}"
        );
        assert!(sections(None)[0].blocks.len() == 3);
    }
}
