//! Reference server for the wrk runs: a bare may_minihttp service answering "Hello, World!" to every
//! request, so comparing it with comet-quotes shows what our routing, JSON and locking cost on top of
//! the same HTTP stack.

use clap::Parser;
use may_minihttp::{HttpServer, HttpService, Request, Response};
use std::io;

#[derive(Parser, Debug)]
#[command(
    name = "hello",
    about = "may_minihttp \"Hello, World!\" reference server"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8092")]
    listen: String,
    /// may worker threads (default: one per CPU, like may's own default).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Clone)]
struct Hello;

impl HttpService for Hello {
    fn call(&mut self, _req: Request, rsp: &mut Response) -> io::Result<()> {
        rsp.header("Content-Type: text/plain");
        rsp.body("Hello, World!");
        Ok(())
    }
}

fn main() {
    let cli = Cli::parse();
    if let Some(w) = cli.workers {
        may::config().set_workers(w.max(1));
    }
    let server = match HttpServer(Hello).start(cli.listen.as_str()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hello: cannot listen on {}: {e}", cli.listen);
            std::process::exit(1);
        }
    };
    // Same start-up line shape as comet-quotes, so scripts can wait for it the same way.
    println!("hello listening on http://{}", cli.listen);
    let _ = server.join();
}
