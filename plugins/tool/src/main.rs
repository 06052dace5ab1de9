//! `herd-plugin-tool`: the two steps of building a herd plugin from C (or any language that
//! compiles to a wasm32-wasi core module), without the wit-bindgen and wasm-tools CLIs.
//!
//! - `bindgen-c`: C bindings for one world of the WIT contract (`wit-bindgen c`).
//! - `componentize`: core module → component with the WASI preview1 reactor adapter
//!   (`wasm-tools component new --adapt`).
//! - `imports`: the imports and exports of a built component, to check what a plugin needs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

#[derive(Parser)]
#[command(
    name = "herd-plugin-tool",
    version,
    about = "Builds herd plugins (WebAssembly components)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generates the C bindings of one world: <world>.h, <world>.c, <world>_component_type.o.
    BindgenC {
        /// The WIT directory (a package, with its dependencies under `deps/`) or file.
        #[arg(long)]
        wit: PathBuf,
        /// The world to generate: validate, transform, derive or plugin for herd:plugin.
        #[arg(long)]
        world: String,
        /// The directory to write the files to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Turns a wasm32-wasi reactor core module into a component (WASI preview1 adapter).
    Componentize {
        /// The core module, linked with `<world>_component_type.o`.
        core: PathBuf,
        /// The component to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Prints the imports and exports of a component.
    Imports {
        /// The component.
        component: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::BindgenC { wit, world, out } => bindgen_c(&wit, &world, &out),
        Command::Componentize { core, output } => componentize(&core, &output),
        Command::Imports { component } => imports(&component),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd-plugin-tool: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bindgen_c(wit: &Path, world: &str, out: &Path) -> Result<()> {
    // wit-bindgen-c takes the `Resolve` of the wit-parser it is built on (re-exported by
    // wit-bindgen-core), which may differ from the workspace's wit-parser.
    use wit_bindgen_core::wit_parser::Resolve;

    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_path(wit)
        .with_context(|| format!("cannot load the WIT at {}", wit.display()))?;
    let world_id = resolve
        .select_world(&[pkg], Some(world))
        .with_context(|| format!("no world `{world}` in {}", wit.display()))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world_id, &mut files)
        .with_context(|| format!("cannot generate the C bindings of world `{world}`"))?;
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn componentize(core: &Path, output: &Path) -> Result<()> {
    let module = read_wasm(core)?;
    if !module.starts_with(b"\0asm\x01\0\0\0") {
        bail!(
            "{} is not a core module (a component already?)",
            core.display()
        );
    }
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder.validate(true);
    encoder.module(&module).with_context(|| {
        format!(
            "cannot read the component type of {} (is `<world>_component_type.o` linked in?)",
            core.display()
        )
    })?;
    encoder
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .context("cannot load the WASI preview1 reactor adapter")?;
    let component = encoder
        .encode()
        .with_context(|| format!("cannot make a component of {}", core.display()))?;
    fs::write(output, component).with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}

fn imports(component: &Path) -> Result<()> {
    use wit_component::DecodedWasm;
    use wit_parser::WorldItem;

    let bytes = read_wasm(component)?;
    if bytes.starts_with(b"\0asm\x01\0\0\0") {
        bail!("{} is a core module, not a component", component.display());
    }
    let (resolve, world) = match wit_component::decode(&bytes)
        .with_context(|| format!("cannot decode {}", component.display()))?
    {
        DecodedWasm::Component(resolve, world) => (resolve, world),
        DecodedWasm::WitPackage(..) => {
            bail!("{} is a WIT package, not a component", component.display())
        }
    };
    let world = &resolve.worlds[world];
    for (dir, items) in [("import", &world.imports), ("export", &world.exports)] {
        for (key, item) in items {
            let name = resolve.name_world_key(key);
            match item {
                WorldItem::Interface { id, .. } => {
                    let funcs: Vec<&str> = resolve.interfaces[*id]
                        .functions
                        .keys()
                        .map(String::as_str)
                        .collect();
                    if funcs.is_empty() {
                        println!("{dir} {name}");
                    } else {
                        println!("{dir} {name} ({})", funcs.join(", "));
                    }
                }
                WorldItem::Function(_) => println!("{dir} func {name}"),
                WorldItem::Type { .. } => println!("{dir} type {name}"),
            }
        }
    }
    Ok(())
}

/// The bytes of a WebAssembly file (core module or component).
fn read_wasm(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!("{} is not a WebAssembly file", path.display());
    }
    Ok(bytes)
}
