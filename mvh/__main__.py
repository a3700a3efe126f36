from mvh.cli import main

main()
