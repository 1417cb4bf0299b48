use site_tests::*;

#[test]
fn smoke() {
    if !require_root("smoke") { return; }
    let pair = WanPair::new(1);
    let s = pair.left().ping(PAIR_RIGHT_ADDR);
    eprintln!("{s:?} {:?}", pair.link().stats());
    assert_eq!(s.received, 3);
}
