//! The queries: derive_structural_path, find_by_path, track, children, tracks_of_module,
//! orphans, pending_updates.

use hmr_track::{ApplyError, Id, State, UpdateOutcome};

use crate::support::{parse, recorded, run, settle};

fn id(state: &State, path: &str) -> Id {
    state
        .find_by_path(path)
        .unwrap_or_else(|| panic!("no track at {path}"))
        .id
}

fn path_list(state: &State, ids: &[Id]) -> Vec<String> {
    ids.iter()
        .map(|&i| state.track(i).unwrap().path.clone())
        .collect()
}

#[test]
fn derive_structural_path_walks_the_parents() {
    let rec = recorded("counter{map #norm:scope{map filter{tap}} filter} total{reduce(0)}");
    let table = [
        "counter",
        "counter|0:map",
        "counter|#norm:scope",
        "counter|#norm:scope|0:map",
        "counter|#norm:scope|1:filter",
        "counter|#norm:scope|1:filter|0:tap",
        "counter|1:filter",
        "total",
        "total|0:reduce",
    ];
    assert_eq!(rec.state.store.tracks.len(), table.len());
    for path in table {
        let track = rec.state.find_by_path(path).unwrap();
        assert_eq!(rec.state.derive_structural_path(track.id).unwrap(), path);
        assert_eq!(track.path, path);
        assert_eq!(rec.state.track(track.id), Some(track));
    }
    assert_eq!(
        rec.state.derive_structural_path(999),
        Err(ApplyError::UnknownTrack {
            event: "derive-structural-path",
            track: 999
        })
    );
}

#[test]
fn derive_structural_path_reports_a_broken_store() {
    let mut state = recorded("c{map}").state;
    let map = id(&state, "c|0:map");
    let c = id(&state, "c");
    state.store.tracks.remove(&c);
    let error = state.derive_structural_path(map).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "derive-structural-path: track {map} has no valid parent chain (parent {c} of track {map} is missing)"
        )
    );
}

#[test]
fn find_by_path_and_track() {
    let rec = recorded("c{map}");
    assert!(rec.state.find_by_path("c|0:map").is_some());
    for missing in ["", "c|", "c|0:filter", "c|1:map", "d", "c|0:map|0:map"] {
        assert!(rec.state.find_by_path(missing).is_none(), "{missing:?}");
    }
    assert!(rec.state.track(12345).is_none());
}

#[test]
fn children_are_unkeyed_by_index_then_keyed_by_key() {
    let rec = recorded("c{#b:scope map #a:scope{tap} filter{tap} scan #c:map}");
    let state = &rec.state;
    let kids: Vec<&str> = state
        .children(id(state, "c"))
        .iter()
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(
        kids,
        [
            "c|0:map",
            "c|1:filter",
            "c|2:scan",
            "c|#a:scope",
            "c|#b:scope",
            "c|#c:map"
        ]
    );
    let kids: Vec<&str> = state
        .children(id(state, "c|1:filter"))
        .iter()
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(kids, ["c|1:filter|0:tap"]);
    assert!(state.children(id(state, "c|2:scan")).is_empty());
    assert!(state.children(999).is_empty());
}

#[test]
fn children_index_order_is_numeric() {
    let src = format!("c{{{}}}", ["map"; 12].join(" "));
    let rec = recorded(&src);
    let indexes: Vec<Option<u32>> = rec
        .state
        .children(id(&rec.state, "c"))
        .iter()
        .map(|t| t.index)
        .collect();
    assert_eq!(indexes, (0..12).map(Some).collect::<Vec<_>>());
}

#[test]
fn tracks_of_module_pending_updates_and_orphans() {
    let mut rec = recorded("a{map filter{tap}} b{scan(0)}");
    assert_eq!(rec.state.tracks_of_module(1).len(), 6);
    assert!(rec.state.pending_updates(1).is_empty());
    assert!(rec.state.orphans(1).is_empty());

    // Module 2: `a` loses its filter subtree and gains a tap, `b` is gone, `c` is new.
    run(&mut rec, &parse("a{map tap} c{map}")).unwrap();
    let state = &rec.state;
    let of_2: Vec<&str> = state
        .tracks_of_module(2)
        .iter()
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(of_2, ["a", "a|0:map", "a|1:tap", "c", "c|0:map"]);
    assert_eq!(
        path_list(state, &state.pending_updates(2)),
        ["a", "a|0:map"]
    );
    // Children before parents.
    assert_eq!(
        path_list(state, &state.orphans(2)),
        ["b|0:scan", "b", "a|1:filter|0:tap", "a|1:filter"]
    );
    let of_1: Vec<&str> = state
        .tracks_of_module(1)
        .iter()
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(
        of_1,
        [
            "a",
            "a|0:map",
            "a|1:filter",
            "a|1:filter|0:tap",
            "b",
            "b|0:scan"
        ]
    );

    let settled = settle(&mut rec, 2).unwrap();
    assert_eq!(settled.added, ["a|1:tap", "c", "c|0:map"]);
    assert_eq!(settled.swapped, ["a|0:map"]);
    assert_eq!(
        settled.reset,
        [(
            "a".to_owned(),
            "children changed from [map, filter] to [map, tap]".to_owned()
        )]
    );
    assert_eq!(settled.removed.len(), 4);
    let state = &rec.state;
    assert!(state.pending_updates(2).is_empty());
    assert!(state.orphans(2).is_empty());
    assert_eq!(state.tracks_of_module(2).len(), 5);
    assert!(state.tracks_of_module(1).is_empty());
    // Orphans are relative to a run: everything is an orphan of a later one.
    assert_eq!(state.orphans(3).len(), 5);
}

#[test]
fn orphans_can_be_removed_one_by_one() {
    let mut rec = recorded("a{map{tap{map}} #k:scope{filter}} b{map}");
    run(&mut rec, &parse("z{map}")).unwrap();
    let orphans = rec.state.orphans(2);
    assert_eq!(orphans.len(), 8);
    for track in orphans {
        rec.update(track, 2, UpdateOutcome::Removed).unwrap();
    }
    let paths: Vec<&String> = rec.state.store.paths.keys().collect();
    assert_eq!(paths, ["z", "z|0:map"]);
}
