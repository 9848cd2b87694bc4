from cocalc_ctl.cli.entry import main

main()
