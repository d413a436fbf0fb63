from ptdist.cli import main

main()
