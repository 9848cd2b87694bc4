from cocalc_ctl.cli.main import main

main()
