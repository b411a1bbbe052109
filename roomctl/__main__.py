from roomctl.cli import main

main()
