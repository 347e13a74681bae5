//! Ending the guest so that the host can tell "init finished" from everything else.
//!
//! QEMU's isa-debug-exit device (port 0xf4) makes QEMU exit with status 1 for a written 0. A
//! power-off, a reset (a watchdog, with `-no-reboot`) and a kernel panic (`panic=-1`) all make it
//! exit with 0, so only this port says that `/init` reached its end.
const DEBUG_EXIT_PORT: u16 = 0xf4;

pub fn off() -> ! {
    // The console's last lines are still in the tty's buffer: let the UART send them first.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: sync has no preconditions; tcdrain on stdout, the console, fails harmlessly if
    // it is not a tty.
    unsafe {
        libc::sync();
        libc::tcdrain(libc::STDOUT_FILENO);
    }
    debug_exit();
    // Without the device (QEMU started by hand): power off.
    // SAFETY: reboot with a valid command; it returns only on failure.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    eprintln!(
        "oomcount-vm: power-off failed: {}",
        std::io::Error::last_os_error()
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(target_arch = "x86_64")]
fn debug_exit() {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(DEBUG_EXIT_PORT.into(), 1, 1) } != 0 {
        return;
    }
    // SAFETY: writing one byte to the debug-exit port; without the device it is ignored.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") 0u8, options(nomem, nostack));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn debug_exit() {}
