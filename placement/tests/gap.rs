//! GAP reader and GAP instances solved through the placement model.

use cloud_placement::gap::{GapError, parse_gap};
use cloud_placement::report::{gap_optimum, locate_gap_dir, solve_gap};
use cloud_placement::{SolveOptions, checker, solve};

const SMALL: &str = "2\n2 3\n1 2 3\n3 2 1\n2 2 2\n2 2 2\n4 2\n1 1\n5\n1\n1\n";

#[test]
fn parses_small_file() {
    let v = parse_gap(SMALL).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].agents, 2);
    assert_eq!(v[0].jobs, 3);
    assert_eq!(v[0].cost[1], vec![3, 2, 1]);
    assert_eq!(v[0].capacity, vec![4, 2]);
    assert_eq!(v[1].jobs, 1);
}

#[test]
fn reader_errors() {
    assert!(matches!(
        parse_gap("1\n2 3\n1 x"),
        Err(GapError::NotANumber { .. })
    ));
    assert!(matches!(
        parse_gap("1\n2 3\n1 2"),
        Err(GapError::UnexpectedEof { .. })
    ));
    assert!(matches!(
        parse_gap("1\n0 3\n"),
        Err(GapError::Invalid { .. })
    ));
    assert!(matches!(
        parse_gap("1\n1 1\n1\n1\n1\n7"),
        Err(GapError::Trailing(1))
    ));
    assert!(matches!(
        parse_gap("1\n1 1\n1\n-1\n1\n"),
        Err(GapError::Invalid { .. })
    ));
    assert!(matches!(parse_gap(""), Err(GapError::UnexpectedEof { .. })));
}

#[test]
fn small_instance_solved_to_optimality() {
    let v = parse_gap(SMALL).unwrap();
    let m = v[0].to_model();
    let s = solve(&m, &SolveOptions::default()).unwrap();
    // Optimal: job1 -> a1 (1), job2 -> a1 or a2 (2), job3 -> a2 (1) = 4
    assert_eq!(s.cost.total, 4.0);
    assert!(s.lower_bound <= 4.0);
    assert!(checker::check(&m, &s.plan).is_feasible());
    let agent_of: Vec<usize> = (1..=3)
        .map(|j| {
            s.plan.placements[&format!("j{j}")][0][1..]
                .parse::<usize>()
                .unwrap()
                - 1
        })
        .collect();
    assert_eq!(v[0].assignment_cost(&agent_of), Some(4));
}

#[test]
fn or_library_instance() {
    // The instances ship with the crate (placement/data/gap); GAP_DATA_DIR may point elsewhere.
    let dir = locate_gap_dir().expect("GAP data: placement/data/gap is part of the repository");
    let text = std::fs::read_to_string(dir.join("gapa.txt")).unwrap();
    let v = parse_gap(&text).unwrap();
    assert_eq!(v.len(), 6);
    let opts = SolveOptions {
        max_scans: 100_000,
        ..SolveOptions::default()
    };
    let run = solve_gap("gapa-1", &v[0], &opts).unwrap();
    let opt = gap_optimum("gapa-1").unwrap();
    assert!(run.lower_bound <= opt + 1e-9);
    assert!(run.cost >= opt - 1e-9);
    assert!(run.cost <= opt * 1.02, "{} vs {opt}", run.cost);
    assert!(run.line().starts_with("gapa-1 "));
}
