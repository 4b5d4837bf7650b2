use super::*;

fn parse(text: &str) -> Result<Policy, PolicyErrors> {
    Policy::from_files([("p.yaml", text)])
}

fn errors(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn smoke() {
    let p = parse("version: 1\nsysctl:\n  vm.swappiness: 10\n").unwrap();
    assert_eq!(p.sysctls.len(), 1);
}
